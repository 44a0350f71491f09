"""Replay: trials that replay recorded learning curves instead of training, to exercise the driver.

``python -m lobsearch.tune SPACE --replay RESULTS.json`` runs the same Tuner, OptunaSearch, ASHA,
callbacks, W&B, checkpoints, results and report as a real search, but each trial, instead of
training, waits ``epoch_s`` seconds per epoch and reports the metrics of a learning curve taken
from ``RESULTS.json`` (a real search's ``results.json``, whose trials record a per-epoch
``history``). No data is prepared and nothing here imports torch, so a trial process stays a
small Ray worker: searcher and scheduler settings can be tried on recorded curves in seconds,
and the driver can be loaded with a thousand trials on a simulated cluster (``bench/scale.py``).

Which curve a sampled configuration gets (``draw``):

- ``recorded``: the curve of the recorded trial nearest to it in parameter space, as recorded;
- ``model``: a curve drawn from a simple model fitted to the recorded ones: per epoch, the
  inverse-distance weighted mean of its ``NEIGHBOURS`` nearest recorded curves, plus Gaussian
  noise whose spread per metric is half the recorded curves' typical epoch-to-epoch change.
  The noise is seeded by the configuration and ``seed``, so a trial that Tune restores from
  its checkpoint continues the same curve.

Distance: each parameter the space searches contributes its squared difference, numbers scaled
to [0, 1] over the recorded range (on a log10 scale when positive and spanning 20x or more),
other values 0 when equal else 1, a parameter only one side has 1; the distance is the root
mean. A recorded curve shorter than the trial's epochs (a pruned or early-stopped trial) holds
its last epoch's values.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lobsearch.errors import DataError, unknown_choice

DRAWS = ("recorded", "model")
"""How a replayed trial's curve is chosen (see the module's docstring)."""

DEFAULT_EPOCH_S = 0.05
"""Seconds a replayed epoch takes by default: a hundred-trial replay runs in seconds."""

NEIGHBOURS = 3
"""Recorded curves blended by the ``model`` draw."""

CONSTANTS = ("n_params", "latency_ms")
"""Per-trial values a real trial reports every epoch (the extra objectives), taken from the
nearest recorded trial."""

CHECKPOINT_FILE = "replay.json"


@dataclass(frozen=True)
class Curve:
    """One recorded trial: its flat parameters (Optuna names), its per-epoch rows (epoch order;
    finite numbers only, ``epoch`` counting from 1) and its constants (``CONSTANTS``)."""

    trial_id: str
    params: Mapping[str, Any]
    rows: tuple[Mapping[str, float], ...]
    constants: Mapping[str, float]


@dataclass(frozen=True)
class Axis:
    """How one parameter's values are compared: numbers scaled over [low, high] (log10 when
    ``log``), anything else by equality (``numeric`` False)."""

    numeric: bool
    low: float = 0.0
    high: float = 1.0
    log: bool = False

    def position(self, value: Any) -> float | None:
        """``value`` in [0, 1] (None when it is not a number)."""
        if not _number(value):
            return None
        scaled = math.log10(value) if self.log and value > 0 else float(value)
        return 0.5 if self.high == self.low else (scaled - self.low) / (self.high - self.low)


@dataclass(frozen=True)
class Replay:
    """A validated replay: where the curves come from and how trials replay them.

    source: the recorded ``results.json``, absolute; export: the export that search ran on (as
    recorded; ``best_config.yaml`` names it); metric: the objective every curve records;
    curves: the recorded trials with at least one epoch; axes: one per searched parameter the
    recorded trials have; epoch_s: seconds per replayed epoch; draw: one of ``DRAWS``; seed:
    seeds the ``model`` draw's noise; noise: that noise's standard deviation per metric;
    oracle_macro_f1: the recorded export's ceiling by horizon (None when unknown).
    """

    source: Path
    export: str
    metric: str
    curves: tuple[Curve, ...]
    axes: Mapping[str, Axis]
    epoch_s: float
    draw: str
    seed: int
    noise: Mapping[str, float]
    oracle_macro_f1: Mapping[str, float] | None = None

    def nearest(self, params: Mapping[str, Any], k: int = 1) -> list[tuple[Curve, float]]:
        """The ``k`` recorded curves nearest to ``params``, nearest first, each with its distance
        (ties broken by trial id, so the choice is deterministic)."""
        scored = sorted(((self.distance(params, c.params), c.trial_id, c) for c in self.curves),
                        key=lambda dc: (dc[0], dc[1]))
        return [(curve, d) for d, _, curve in scored[:k]]

    def distance(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
        """The root-mean-square parameter distance of two configurations over ``axes``."""
        total = 0.0
        for name, axis in self.axes.items():
            total += _difference(axis, a.get(name), b.get(name)) ** 2
        return math.sqrt(total / max(1, len(self.axes)))

    def curve_for(self, params: Mapping[str, Any], epochs: int, fold: int = 0) -> tuple[list[dict[str, float]], Curve]:
        """The ``epochs`` rows (epoch 1..epochs) that the trial of ``params`` reports, and the
        nearest recorded curve (whose constants it reports). ``fold`` k >= 1 (walk-forward) draws
        fold k's own noise; 0 is the holdout draw."""
        k = 1 if self.draw == "recorded" else NEIGHBOURS
        neighbours = self.nearest(params, k)
        weights = [1.0 / (d + 1e-3) for _, d in neighbours]
        keys = set.intersection(*(set(row) for c, _ in neighbours for row in c.rows)) - {"epoch"}
        rng = random.Random(_config_seed(params, self.seed, fold))
        rows = []
        for epoch in range(1, epochs + 1):
            at = [c.rows[min(epoch, len(c.rows)) - 1] for c, _ in neighbours]
            row = {"epoch": epoch}
            for key in sorted(keys):
                value = sum(w * r[key] for w, r in zip(weights, at)) / sum(weights)
                if self.draw == "model":
                    value += rng.gauss(0.0, self.noise.get(key, 0.0))
                row[key] = value
            rows.append(row)
        return rows, neighbours[0][0]

    def describe(self) -> str:
        """One line saying what this replay does."""
        return (f"replaying {len(self.curves)} recorded learning curves of {self.source} "
                f"({self.draw} draw, {self.epoch_s:g} s per epoch): no data is prepared, no model "
                "is trained, and the best trial is not evaluated on the test split")

    def record(self) -> dict[str, Any]:
        """What ``results.json`` and the search record keep of this replay (``from_record``)."""
        return {"source": str(self.source), "epoch_s": self.epoch_s, "draw": self.draw, "seed": self.seed,
                "curves": len(self.curves)}

    def fingerprint(self) -> str:
        """``replay:`` and the first 16 hex digits of the recorded file's SHA-256."""
        return "replay:" + hashlib.sha256(self.source.read_bytes()).hexdigest()[:16]

    @property
    def root(self) -> str:
        """The recorded search's export, where the results say the search ran."""
        return self.export

    @property
    def manifest(self) -> dict[str, Any]:
        """The recorded export's oracle ceiling, as an export's manifest states it."""
        return {"oracle_macro_f1": dict(self.oracle_macro_f1)} if self.oracle_macro_f1 else {}


def load_replay(path: str | Path, *, metric: str, searched: Iterable[str], epoch_s: float = DEFAULT_EPOCH_S,
                draw: str = "recorded", seed: int = 0) -> Replay:
    """Read and validate the curves of a search's ``results.json`` for a replay of ``metric``.

    ``searched`` names the parameters the space to replay searches (Optuna names). Raises
    DataError naming the file and the rule: not found, not JSON, not a results.json (an object
    with a ``trials`` list), no trial with a per-epoch ``history`` recording ``metric``, no
    searched parameter in common with the recorded trials; and for an ``epoch_s`` that is not a
    finite number >= 0 or a ``draw`` outside ``DRAWS``.
    """
    where, searched = f"--replay {path}", list(searched)
    if not (isinstance(epoch_s, int | float) and math.isfinite(epoch_s) and epoch_s >= 0):
        raise DataError(f"--replay-epoch-s: must be a finite number of seconds >= 0 (got {epoch_s!r})")
    if draw not in DRAWS:
        raise DataError(f"--replay-curves: {unknown_choice('curve draw', draw, DRAWS)}")
    results = _read_results(Path(path), where)
    curves = tuple(c for c in (_curve(t, i) for i, t in enumerate(results["trials"])) if c is not None)
    with_metric = tuple(c for c in curves if all(metric in row for row in c.rows))
    if not with_metric:
        seen = sorted({k for c in curves for row in c.rows for k in row} - {"epoch"})
        raise DataError(
            f"{where}: no trial records a learning curve of {metric!r} (a per-epoch 'history' with it in "
            f"every epoch; {len(results['trials'])} trials, {len(curves)} with a history; metrics recorded: "
            f"{', '.join(seen) or 'none'}); replay needs the results.json of a search whose trials ran epochs"
        )
    recorded = {name for c in with_metric for name in c.params}
    names = [n for n in dict.fromkeys(searched) if n in recorded]
    if not names:
        raise DataError(
            f"{where}: its trials share no searched parameter with the space (recorded: "
            f"{', '.join(sorted(recorded)) or 'none'}; searched: {', '.join(searched) or 'none'}); "
            "replay the results of a search of the same space"
        )
    return Replay(
        source=Path(path).resolve(), export=str(results.get("export") or ""), metric=metric, curves=with_metric,
        axes={n: _axis([c.params.get(n) for c in with_metric]) for n in names}, epoch_s=float(epoch_s),
        draw=draw, seed=int(seed), noise=_noise(with_metric),
        oracle_macro_f1=results.get("oracle_macro_f1") if isinstance(results.get("oracle_macro_f1"), dict) else None,
    )


def from_record(record: Mapping[str, Any], *, metric: str, searched: Iterable[str]) -> Replay:
    """The replay a search recorded (``Replay.record``), read again from its file."""
    return load_replay(record["source"], metric=metric, searched=searched, epoch_s=record["epoch_s"],
                       draw=record["draw"], seed=record.get("seed", 0))


def _read_results(path: Path, where: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{where}: not found (give the results.json a search wrote in runs/<name>/)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{where}: not valid JSON ({error}); give a search's results.json") from None
    if not isinstance(results, dict) or not isinstance(results.get("trials"), list):
        got = type(results).__name__ if not isinstance(results, dict) else "an object without a 'trials' list"
        raise DataError(f"{where}: not a lobsearch results.json (expected an object with a 'trials' list, got {got})")
    return results


def _curve(trial: Any, index: int) -> Curve | None:
    """A recorded trial's curve, or None when it has no usable epoch."""
    if not isinstance(trial, dict) or not isinstance(trial.get("history"), list):
        return None
    rows = []
    for row in trial["history"]:
        if isinstance(row, dict):
            rows.append({k: float(v) for k, v in row.items() if _number(v) and k != "time_s"})
    rows = sorted((r for r in rows if "epoch" in r and len(r) > 1), key=lambda r: r["epoch"])
    if not rows:
        return None
    params = trial.get("params") if isinstance(trial.get("params"), dict) else {}
    constants = {k: float(trial[k]) for k in CONSTANTS if _number(trial.get(k))}
    return Curve(trial_id=str(trial.get("trial_id", index)), params=dict(params), rows=tuple(rows),
                 constants=constants)


def _axis(values: list[Any]) -> Axis:
    present = [v for v in values if v is not None]
    if not present or not all(_number(v) for v in present):
        return Axis(numeric=False)
    low, high = min(present), max(present)
    log = low > 0 and high / low >= 20
    return Axis(numeric=True, low=math.log10(low) if log else low, high=math.log10(high) if log else high, log=log)


def _difference(axis: Axis, a: Any, b: Any) -> float:
    if a is None or b is None:
        return 0.0 if a is b else 1.0
    if not axis.numeric:
        return 0.0 if str(a) == str(b) else 1.0
    pa, pb = axis.position(a), axis.position(b)
    if pa is None or pb is None:
        return 0.0 if str(a) == str(b) else 1.0
    return min(1.0, abs(pa - pb))


def _noise(curves: tuple[Curve, ...]) -> dict[str, float]:
    """Per metric, half the median absolute epoch-to-epoch change over the recorded curves."""
    steps: dict[str, list[float]] = {}
    for curve in curves:
        for before, after in zip(curve.rows, curve.rows[1:]):
            for key in set(before) & set(after) - {"epoch"}:
                steps.setdefault(key, []).append(abs(after[key] - before[key]))
    return {key: 0.5 * sorted(found)[len(found) // 2] for key, found in steps.items()}


def _config_seed(params: Mapping[str, Any], seed: int, fold: int = 0) -> int:
    text = json.dumps({str(k): str(v) for k, v in params.items()}, sort_keys=True) + f"|{seed}"
    text += f"|fold {fold}" if fold else ""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A Tune config with nested mappings joined into dotted (Optuna) names."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def replay_trial(config: dict[str, Any], *, replay: Replay, epochs: int, family: str, folds: int = 0,
                 metric: str = "", sign: int = 1) -> None:
    """The Tune trainable of a replayed trial: ``epochs`` (or the sampled ``train.epochs``) epochs
    of ``replay.epoch_s`` seconds each, every one reported with a checkpoint (the epoch reached),
    from the epoch after the checkpoint Tune restores. ``family`` is the model family when the
    space has one (else ``model.name`` is sampled). Reports what a real trial reports (the
    recorded metrics, ``fit_status``, ``n_params``, ``latency_ms``, ``model_family``,
    ``node_id``), plus ``gpu_ids`` (the logical GPUs Ray assigned), ``replay_of`` (the nearest
    recorded trial) and ``torch_in_trial``.

    Under walk-forward (``folds`` >= 2) it replays ``folds`` folds of those epochs one after
    another, fold k its own draw (``Replay.curve_for``), and reports the fold fields a trained
    trial reports (``_fold_fields``, as ``trial._train_folds``): ``metric`` (larger is better when
    ``sign`` is +1) is then the mean over the folds so far of each fold's best epoch, and the
    epoch counts across folds, so ``tuner.FoldGate`` and ASHA see what they see in a real search.
    """
    import ray
    from ray import tune

    params = flat_config(config)
    per_fold = int(params.get("train.epochs", epochs))
    curves = [replay.curve_for(params, per_fold, fold) for fold in (range(1, folds + 1) if folds else [0])]
    nearest, total = curves[0][1], per_fold * len(curves)
    first = _restored_epoch(tune.get_checkpoint()) + 1
    constants = {
        **nearest.constants,
        "model_family": str(params.get("model.name", family)),
        "node_id": ray.get_runtime_context().get_node_id(),
        "gpu_ids": ",".join(str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])),
        "replay_of": nearest.trial_id,
    }
    work = Path(tempfile.mkdtemp(prefix="lobsearch-replay-"))
    try:
        for epoch in range(first, total + 1):
            time.sleep(replay.epoch_s)
            (work / CHECKPOINT_FILE).write_text(json.dumps({"epoch": epoch}))
            status = "completed" if epoch == total else "running"
            fold, fold_epoch = divmod(epoch - 1, per_fold)
            metrics = {**curves[fold][0][fold_epoch], "epoch": epoch, **constants, "fit_status": status,
                       "torch_in_trial": "torch" in sys.modules}
            if folds:
                metrics.update(_fold_fields([rows for rows, _ in curves], fold + 1, fold_epoch + 1, metric, sign))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fold_fields(curves: list[list[dict[str, float]]], fold: int, fold_epoch: int, metric: str,
                 sign: int) -> dict[str, Any]:
    """What a walk-forward trial reports at epoch ``fold_epoch`` of fold ``fold`` (both from 1),
    given every fold's replayed rows: the fold's own value, the mean over folds of each fold's best
    epoch so far, and at the fold's last epoch its score among ``fold_scores``."""
    def best(rows: list[dict[str, float]]) -> float:
        return max((row[metric] for row in rows), key=lambda value: sign * value)

    done = [best(rows) for rows in curves[: fold - 1]]
    scores = done + [best(curves[fold - 1][:fold_epoch])]
    last = fold_epoch == len(curves[fold - 1])
    return {"fold": fold, "folds": len(curves), "fold_epoch": fold_epoch,
            f"fold_{metric}": curves[fold - 1][fold_epoch - 1][metric], metric: statistics.fmean(scores),
            "fold_end": last, "folds_done": len(scores) if last else len(done),
            "fold_scores": scores if last else done, "fold_std": statistics.stdev(scores) if len(scores) > 1 else 0.0}


def _restored_epoch(checkpoint: Any) -> int:
    """The last epoch a replayed trial's checkpoint holds (0 without one)."""
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        try:
            return int(json.loads((Path(folder) / CHECKPOINT_FILE).read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0


def searched_names(space: Any) -> list[str]:
    """Every Optuna parameter name a ``lobsearch.space.SearchSpace`` can sample."""
    spec = space.spec
    names = list(spec.params) + (["model.name"] if len(spec.models) > 1 else [])
    return names + [f"{family}.{key}" for family, body in spec.models.items() for key in body.params]
