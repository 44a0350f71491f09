"""Classification metrics and naive baselines on numpy arrays of class indices.

Classes are ``contract.Label`` indices (Down=0, Stable=1, Up=2). Every ratio whose denominator
is zero (a class never predicted, never present, or a constant prediction) is 0, never NaN.
Select models on macro-F1: the classes are imbalanced and accuracy misleads.
"""

from __future__ import annotations

import numpy as np

from lobsearch.contract import CLASS_NAMES, MISSING_LABEL

LOG_LOSS_EPS = 1e-15
"""Probabilities are clipped to [eps, 1] before the log, so a confident miss costs ~34.5 nats."""


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray | None = None, n_classes: int = 3
) -> dict:
    """Metrics of predictions ``y_pred`` (N,) against labels ``y_true`` (N,), ints < n_classes.

    Returns floats: accuracy, macro_precision, macro_recall, macro_f1, mcc (multiclass Matthews,
    Gorodkin 2004), kappa (Cohen), per-class ``precision_<class>``, ``recall_<class>``,
    ``f1_<class>`` (class names down/stable/up for 3 classes, else indices); lists precision,
    recall, f1, support (per class); confusion (n_classes x n_classes nested list of ints, rows
    = true class); and log_loss (mean negative log-likelihood in nats) when ``probs`` (N,
    n_classes), rows summing to 1, is given. Raises ValueError on empty or mismatched input,
    labels outside [0, n_classes) or probabilities that are not a distribution per row.
    """
    y_true = _labels("y_true", y_true, n_classes)
    y_pred = _labels("y_pred", y_pred, n_classes)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape}, y_pred {y_pred.shape}: they must match")
    cm = confusion_matrix(y_true, y_pred, n_classes)
    precision, recall, f1 = _per_class(cm)
    out = {
        "accuracy": _ratio(np.trace(cm), cm.sum()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "mcc": matthews(cm),
        "kappa": cohen_kappa(cm),
    }
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        out.update({f"{name}_{c}": float(v) for c, v in zip(class_keys(n_classes), values)})
        out[name] = [float(v) for v in values]
    out["support"] = [int(v) for v in cm.sum(axis=1)]
    out["confusion"] = cm.tolist()
    if probs is not None:
        out["log_loss"] = log_loss(y_true, probs, n_classes)
    return out


def class_keys(n_classes: int) -> list[str]:
    """Key suffix of each class: ``["down", "stable", "up"]`` for 3 classes, else ``["0", ...]``."""
    if n_classes == len(CLASS_NAMES):
        return [name.lower() for name in CLASS_NAMES]
    return [str(k) for k in range(n_classes)]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """(n_classes, n_classes) int64 counts; entry [i, j] counts true class i predicted as j."""
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def matthews(cm: np.ndarray) -> float:
    """Multiclass Matthews correlation of a confusion matrix, in [-1, 1]; 0 when undefined."""
    cm = cm.astype(np.float64)
    n, correct = cm.sum(), np.trace(cm)
    true, pred = cm.sum(axis=1), cm.sum(axis=0)
    numerator = correct * n - true @ pred
    denominator = np.sqrt((n * n - pred @ pred) * (n * n - true @ true))
    return _ratio(numerator, denominator)


def cohen_kappa(cm: np.ndarray) -> float:
    """Cohen's kappa, (p_observed - p_chance) / (1 - p_chance); 0 when p_chance is 1."""
    cm = cm.astype(np.float64)
    n = cm.sum()
    if n == 0:
        return 0.0
    observed = np.trace(cm) / n
    chance = (cm.sum(axis=1) @ cm.sum(axis=0)) / (n * n)
    return _ratio(observed - chance, 1.0 - chance)


def log_loss(y_true: np.ndarray, probs: np.ndarray, n_classes: int = 3) -> float:
    """Mean -log p(true class) in nats; ``probs`` (N, n_classes) clipped to [1e-15, 1].

    Raises ValueError when probs has the wrong shape, is not finite, is negative, or a row does
    not sum to 1 within 1e-3 (logits passed by mistake).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(y_true), n_classes):
        raise ValueError(f"probs: expected shape ({len(y_true)}, {n_classes}), got {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("probs: every value must be a finite probability >= 0")
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-3)
    if bad.size:
        raise ValueError(
            f"probs: rows must sum to 1 (softmax outputs); row {bad[0]} sums to {sums[bad[0]]:.4g}"
        )
    picked = np.clip(probs[np.arange(len(y_true)), y_true], LOG_LOSS_EPS, 1.0)
    return float(-np.log(picked).mean())


def naive_baselines(
    y_true: np.ndarray, y_prev: np.ndarray, y_train: np.ndarray | None = None, n_classes: int = 3
) -> dict:
    """Macro-F1 and accuracy of two predictors that need no model.

    majority: always the most frequent class of ``y_train`` (the training labels; falls back to
    ``y_true`` when None; ties go to the lower index). previous: ``y_prev`` (N,), for each sample
    the last label known before it (e.g. the label of the preceding window); where it is
    MISSING_LABEL (-1) the majority class stands in. Returns majority_class (int),
    majority_macro_f1, majority_accuracy, previous_macro_f1, previous_accuracy.
    """
    y_true = _labels("y_true", y_true, n_classes)
    fitted = y_true if y_train is None else _labels("y_train", y_train, n_classes)
    majority = int(np.bincount(fitted, minlength=n_classes).argmax())
    y_prev = np.asarray(y_prev)
    if y_prev.shape != y_true.shape:
        raise ValueError(f"y_prev has shape {y_prev.shape}, y_true {y_true.shape}: they must match")
    previous = _labels("y_prev", np.where(y_prev == MISSING_LABEL, majority, y_prev), n_classes)
    out: dict = {"majority_class": majority}
    for name, pred in (("majority", np.full_like(y_true, majority)), ("previous", previous)):
        scores = classification_metrics(y_true, pred, n_classes=n_classes)
        out[f"{name}_macro_f1"] = scores["macro_f1"]
        out[f"{name}_accuracy"] = scores["accuracy"]
    return out


def lift(metrics: dict, baselines: dict) -> dict:
    """How far a model's macro-F1 beats the best naive baseline.

    Returns lift_macro_f1 (metrics["macro_f1"] minus the best baseline macro-F1, can be < 0),
    best_baseline ("majority" or "previous") and best_baseline_macro_f1.
    """
    best = max(("majority", "previous"), key=lambda name: baselines[f"{name}_macro_f1"])
    best_f1 = baselines[f"{best}_macro_f1"]
    return {
        "lift_macro_f1": float(metrics["macro_f1"] - best_f1),
        "best_baseline": best,
        "best_baseline_macro_f1": float(best_f1),
    }


def _per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 of a confusion matrix, 0 where undefined."""
    hits = np.diag(cm).astype(np.float64)
    precision = _safe_divide(hits, cm.sum(axis=0))
    recall = _safe_divide(hits, cm.sum(axis=1))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return precision, recall, f1


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros_like(denominator)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator != 0 else 0.0


def _labels(name: str, values: np.ndarray, n_classes: int) -> np.ndarray:
    """``values`` as a non-empty 1-D int64 array of class indices; raises ValueError otherwise."""
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"{name}: expected a non-empty 1-D array of class indices, got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: expected integer class indices, got dtype {array.dtype}")
    outside = array[(array < 0) | (array >= n_classes)]
    if outside.size:
        raise ValueError(
            f"{name}: class indices must be in [0, {n_classes}), got {outside[0]} "
            f"({outside.size} value(s) outside; drop MISSING_LABEL rows first)"
        )
    return array.astype(np.int64)
