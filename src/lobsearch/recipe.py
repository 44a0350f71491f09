"""One run, from prepared days to a trained and evaluated model: the recipe every caller shares.

``build_run`` cuts the windows of a run config's data settings from the prepared days, builds
its model (seeded) and decides its backend; ``fit_run`` trains it with ``loop.fit``;
``evaluate_model`` and ``evaluate_checkpoint`` report the best weights on validation and test
against the naive baselines, and judge them (``lobsearch.evaluation``): trading metrics net
of costs on the days' raw quotes, calibration, and the verdict on the test lift.
``python -m lobsearch.train``, the search trial, the GPU probe and the search's final
evaluation all call these, so a trial and a single run train alike.

This is where a ``RunConfig`` becomes plain values: ``fit_settings`` for the loop,
``device_setup``'s keywords for the backend.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from lobsearch.backend import Backend, device_setup
from lobsearch.checkpoints import load_checkpoint, save_checkpoint
from lobsearch.config import RunConfig, TrainConfig
from lobsearch.contract import MISSING_LABEL, N_CLASSES, STRATEGY_CLASS_NAMES
from lobsearch.data.features import feature_columns, n_selected
from lobsearch.data.windows import WindowSet, build_window_set
from lobsearch.errors import ConfigError, DataError
from lobsearch.evaluation import Seen, calibration_report, net_bps_per_day, trading_report, verdict_report
from lobsearch.files import plain
from lobsearch.inference import evaluate
from lobsearch.loop import EpochResult, FitResult, FitSettings, fit, seed_everything, subsample
from lobsearch.metrics import lift, naive_baselines
from lobsearch.models import create_model, model_spec
from lobsearch.steps import StepSettings, epoch_steps
from lobsearch.trading import Quotes, WindowExits

if TYPE_CHECKING:
    from lobsearch.data.pipeline import Prepared


@dataclass
class BuiltRun:
    """Windows and model of one run config, ready for ``loop.fit``.

    train/val/test: WindowSets on the CPU (test None unless asked for, or when the export has
    no test split); n_features: width F' of every window; n_params: trainable parameters;
    latency_ms: median forward time of one window on the device; data_hash: identifies the
    data (prepared key, data config, normalization statistics) for checkpoints; prepared: the
    data the windows were cut from (its days' raw quotes price the evaluation's trades).
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
    prepared: Prepared | None = None


def build_run(
    config: RunConfig, prepared: Prepared, *, device: str | torch.device, with_test: bool = False
) -> BuiltRun:
    """Cut the windows of ``prepared`` for ``config.data`` and build ``config.model`` (seeded).

    Train windows are capped at ``data.max_train_windows`` (evenly spaced). The backend is
    decided here (``backend_for``) from the model's registry settings and the planned
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
    backend = backend_for(config, device, planned_steps=steps * config.train.epochs)
    return BuiltRun(
        config, model, train, windows["val"], windows.get("test"), width,
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        forward_latency_ms(model, width, data.window, backend),
        data_hash(config, prepared), backend, prepared,
    )


def fit_settings(cfg: TrainConfig) -> FitSettings:
    """The loop's plain settings of a run config's ``train`` section."""
    step = StepSettings(
        learning_rate=cfg.learning_rate, weight_decay=float(cfg.weight_decay), schedule=cfg.schedule,
        warmup_epochs=cfg.warmup_epochs, loss=cfg.loss, focal_gamma=float(cfg.focal_gamma),
        grad_clip=None if cfg.grad_clip is None else float(cfg.grad_clip),
    )
    return FitSettings(
        epochs=cfg.epochs, batch_size=cfg.batch_size, steps_per_epoch=cfg.steps_per_epoch,
        patience=cfg.patience, seed=cfg.seed, class_weights=cfg.class_weights,
        eval_batch_size=cfg.eval_batch_size, max_eval_windows=cfg.max_eval_windows, step=step,
    )


def backend_for(config: RunConfig, device: str | torch.device, *, planned_steps: int | None) -> Backend:
    """The backend of a run: the model's registry flags and the ``train`` section's choices."""
    cfg = config.train
    return device_setup(
        model_spec(config.model.name).backend, device, precision=cfg.precision, compile=cfg.compile,
        cuda_graphs=cfg.cuda_graphs, num_threads=cfg.num_threads, planned_steps=planned_steps,
    )


def fit_run(
    built: BuiltRun,
    *,
    on_epoch: Callable[[EpochResult], bool | None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: str | Path | None = None,
) -> FitResult:
    """Train ``built`` with ``loop.fit`` on its own windows, settings, backend and data hash."""
    return fit(
        built.model, built.train, built.val, fit_settings(built.config.train),
        device=built.backend.device, on_epoch=on_epoch, checkpoint_dir=checkpoint_dir,
        resume=resume, data_hash=built.data_hash, backend=built.backend, val_extra=val_trading(built),
    )


def val_trading(built: BuiltRun) -> Callable[[np.ndarray, np.ndarray], dict[str, float]] | None:
    """Each epoch's ``net_bps_per_day`` on the validation days' raw quotes (``eval.fee_bps``,
    held ``data.horizon`` rows); None when trading is off or the days have no raw quotes."""
    settings, prepared = built.config.eval, built.prepared
    if settings.trading == "off" or prepared is None or prepared.quotes_note:
        return None
    quotes, horizon, fee = split_quotes(prepared, "val"), built.config.data.horizon, float(settings.fee_bps)
    return lambda ends, pred: {"net_bps_per_day": net_bps_per_day(pred, ends, quotes, horizon, fee)}


def train_once(config: RunConfig, prepared: Prepared, *, device: str | torch.device | None = None) -> dict[str, Any]:
    """Build and fit ``config`` once on ``prepared`` (no checkpoints, no test windows): what one
    seed of a re-evaluation does. Returns {"status", "best_epoch", "epochs", "val": the best
    epoch's validation metrics, "state": its weights on the CPU (None when no epoch
    finished), "message"}."""
    built = build_run(config, prepared, device=pick_device(config.train.device) if device is None else device)
    result = fit_run(built)
    return {"status": result.status, "best_epoch": result.best_epoch, "epochs": len(result.history),
            "val": plain(result.best_val), "state": result.best_state, "message": result.message}


def evaluate_seeds(config: RunConfig, prepared: Prepared, states: list[dict[str, torch.Tensor]], *,
                   best_epoch: int, save_to: Path | None = None) -> dict[str, Any]:
    """The winner of a re-evaluation judged once on test: ``evaluate_model`` of its first seed's
    weights (trading, calibration), the test and val macro-F1 of every seed, and the verdict over
    all seeds' test predictions (``selection.lift_interval`` resamples the seeds too).

    states: one ``state_dict`` per seed, the first one the model that ``best_config.yaml``
    (with that seed) trains again, reached at ``best_epoch``; ``save_to``: a folder where that
    model is saved as a checkpoint ``evaluate_checkpoint`` reads ("checkpoint_note" says why
    when it cannot be). Raises DataError for no state.
    """
    if not states:
        raise DataError("evaluate_seeds: no trained seed to evaluate")
    built = build_run(config, prepared, device=pick_device(config.train.device), with_test=True)
    report = {**evaluate_model(built, states[0]), "best_epoch": best_epoch}
    if save_to is not None:
        try:
            save_checkpoint(save_to, {"data_hash": built.data_hash,
                                      "progress": {"best_state": states[0], "best_epoch": best_epoch}})
        except OSError as error:  # the evaluation stands; the results files say what could not be kept
            report["checkpoint_note"] = f"{save_to}: the model could not be saved ({error.strerror or error})"
    if built.test is None or len(states) == 1:
        return report
    seen = []
    per_seed = {"val_macro_f1": [], "test_macro_f1": []}
    for state in states:
        built.model.load_state_dict(state)
        for split in ("val", "test"):
            metrics, view = predict_split(built, split, built.model)
            per_seed[f"{split}_macro_f1"].append(float(metrics["macro_f1"]))
            if split == "test":
                seen.append(view)
    stacked = Seen(seen[0].y_true, np.stack([view.y_pred for view in seen]), seen[0].probs, seen[0].y_prev,
                   seen[0].ends)
    data, settings = config.data, config.eval
    majority = int(np.bincount(built.train.y.cpu().numpy(), minlength=N_CLASSES).argmax())
    report["verdict"] = verdict_report(stacked, majority_class=majority, window=data.window, horizon=data.horizon,
                                       smoothing=data.labels.smoothing, stride=data.stride,
                                       n_boot=settings.n_boot, level=settings.level)
    report["seeds"] = per_seed
    return report


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


def predict_split(built: BuiltRun, name: str, model: nn.Module) -> tuple[dict[str, Any], Seen]:
    """Metrics of ``model`` on split ``name`` and what the judging needs of it (``Seen``): labels,
    predictions, probabilities, previous known labels and end rows of every window, in order."""
    windows = getattr(built, name)
    cfg = built.config.train
    metrics, y_true, y_pred, probs = evaluate(model, windows, device=built.backend.device,
                                              batch_size=cfg.eval_batch_size, backend=built.backend)
    y_prev = previous_known_labels(windows, built.config.data.horizon)
    return metrics, Seen(y_true, y_pred, probs, y_prev, windows.ends.cpu().numpy())


def split_report(built: BuiltRun, metrics: dict[str, Any], seen: Seen) -> dict[str, Any]:
    """``metrics`` of one split, its naive baselines and the lift over them.

    The previous-label baseline predicts each window with ``previous_known_labels`` (the
    majority class of the training windows where there is none).
    """
    baselines = plain(naive_baselines(seen.y_true, seen.y_prev, y_train=built.train.y.numpy()))
    return {"metrics": metrics, "baselines": baselines, "lift": plain(lift(metrics, baselines))}


def evaluate_model(built: BuiltRun, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Load ``state`` into the model and report on val and (when built) test.

    Returns {"val": metrics, "test": metrics, "baselines": {split: ...}, "lift": {split: lift
    of macro-F1 over the best naive baseline}, "lift_detail": {split: ...}} and the judging of
    ``judge``: "trading", "calibration" and "verdict". Never raises for data without raw quotes
    (a note instead): ``config.trading_problems`` refuses ``eval.trading: on`` before training.
    """
    built.model.load_state_dict(state)
    splits = [s for s in ("val", "test") if getattr(built, s) is not None]
    predicted = {s: predict_split(built, s, built.model) for s in splits}
    reports = {s: split_report(built, *predicted[s]) for s in splits}
    return {
        **{s: r["metrics"] for s, r in reports.items()},
        "baselines": {s: r["baselines"] for s, r in reports.items()},
        "lift": {s: r["lift"]["lift_macro_f1"] for s, r in reports.items()},
        "lift_detail": {s: r["lift"] for s, r in reports.items()},
        **judge(built, {s: seen for s, (_, seen) in predicted.items()}),
    }


def judge(built: BuiltRun, seen: dict[str, Seen]) -> dict[str, Any]:
    """The model in trading terms on ``seen`` (val, and test when built): {"trading":
    ``evaluation.trading_report`` or {"note"}, "calibration": ``evaluation.calibration_report``
    on test (val without one) or {"note"}, "verdict": ``evaluation.verdict_report``}.

    The verdict's bootstrap blocks span the window, the horizon and ``data.labels.smoothing``
    (the smoothing of computed labels; an export's own labels may smooth otherwise) at
    ``data.stride``.
    """
    data, settings = built.config.data, built.config.eval
    majority = int(np.bincount(built.train.y.cpu().numpy(), minlength=N_CLASSES).argmax())
    evaluated = "test" if "test" in seen else "val"
    try:
        calibration = calibration_report(seen["val"], seen[evaluated], split=evaluated)
    except DataError as error:
        calibration = {"note": str(error)}
    return {
        "trading": _trading(built, seen, majority),
        "calibration": calibration,
        "verdict": verdict_report(seen.get("test"), majority_class=majority, window=data.window,
                                  horizon=data.horizon, smoothing=data.labels.smoothing, stride=data.stride,
                                  n_boot=settings.n_boot, level=settings.level),
    }


def _trading(built: BuiltRun, seen: dict[str, Seen], majority: int) -> dict[str, Any]:
    """``evaluation.trading_report`` on the raw quotes of each split's days, or {"note": why there is none}."""
    settings, prepared = built.config.eval, built.prepared
    if settings.trading == "off":
        return {"note": "eval.trading is off"}
    if prepared is None:
        return {"note": "the run was built without its prepared days"}
    if prepared.quotes_note:  # eval.trading: on was refused before training (``trading_problems``)
        return {"note": prepared.quotes_note}
    quotes = {s: split_quotes(prepared, s) for s in seen}
    try:
        return trading_report(seen, quotes, horizon=built.config.data.horizon, fee_bps=settings.fee_bps,
                              majority_class=majority, tau_grid=settings.tau_grid,
                              class_names=STRATEGY_CLASS_NAMES.get(prepared.label_strategy))
    except DataError as error:  # the model's other figures still stand
        return {"note": str(error)}


def split_quotes(prepared: Prepared, name: str) -> Quotes:
    """The raw mid and spread (USD) of split ``name``'s days, rows counted as its WindowSet's ends,
    and the exit prices of its days of non-overlapping windows (``PreparedDay.forward``)."""
    days = _split_days(prepared, name)
    exits = [None if day.forward is None else WindowExits(day.forward, day.layout.window, day.layout.stride)
             for day in days]
    return Quotes.from_days([day.mid for day in days], [day.spread for day in days], exits)


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
