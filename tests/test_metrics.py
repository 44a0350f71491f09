"""Metrics and naive baselines against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lobsearch.metrics import classification_metrics, confusion_matrix, lift, naive_baselines


def _from_confusion(cm: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Label arrays whose confusion matrix (rows = true) is ``cm``."""
    pairs = [(t, p) for t, row in enumerate(cm) for p, n in enumerate(row) for _ in range(n)]
    true, pred = zip(*pairs)
    return np.array(true), np.array(pred)


def test_symmetric_confusion_by_hand():
    # true\pred  D  S  U      row sums 3 5 2, column sums 3 5 2, 6 of 10 right
    cm = [[2, 1, 0],
          [1, 3, 1],
          [0, 1, 1]]
    m = classification_metrics(*_from_confusion(cm))
    assert m["confusion"] == cm
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx([2 / 3, 3 / 5, 1 / 2])
    assert m["recall"] == pytest.approx([2 / 3, 3 / 5, 1 / 2])
    assert [m["f1_down"], m["f1_stable"], m["f1_up"]] == pytest.approx([2 / 3, 0.6, 0.5])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.6 + 0.5) / 3)
    # mcc = (6*10 - (3*3 + 5*5 + 2*2)) / (100 - 38) = 22/62; kappa = (0.6 - 0.38)/(1 - 0.38)
    assert m["mcc"] == pytest.approx(22 / 62)
    assert m["kappa"] == pytest.approx(0.22 / 0.62)
    assert m["support"] == [3, 5, 2]


def test_asymmetric_confusion_by_hand():
    # true\pred  D  S  U      row sums 4 4 2, column sums 5 3 2, 6 of 10 right
    cm = [[3, 0, 1],
          [2, 2, 0],
          [0, 1, 1]]
    m = classification_metrics(*_from_confusion(cm))
    assert [m["precision_down"], m["precision_stable"], m["precision_up"]] == pytest.approx(
        [3 / 5, 2 / 3, 1 / 2])
    assert [m["recall_down"], m["recall_stable"], m["recall_up"]] == pytest.approx(
        [3 / 4, 1 / 2, 1 / 2])
    # f1: 2*.6*.75/1.35 = 2/3; 2*(2/3)*(1/2)/(7/6) = 4/7; 1/2
    assert m["f1"] == pytest.approx([2 / 3, 4 / 7, 1 / 2])
    assert m["macro_f1"] == pytest.approx(73 / 126)
    assert m["macro_precision"] == pytest.approx((3 / 5 + 2 / 3 + 1 / 2) / 3)
    assert m["macro_recall"] == pytest.approx((3 / 4 + 1 / 2 + 1 / 2) / 3)
    # sum(true_k * pred_k) = 4*5 + 4*3 + 2*2 = 36; mcc = (60 - 36)/sqrt((100-38)(100-36))
    assert m["mcc"] == pytest.approx(24 / math.sqrt(62 * 64))
    assert m["kappa"] == pytest.approx((0.6 - 0.36) / (1 - 0.36))


def test_binary_mcc_matches_the_classic_formula():
    tp, fn, fp, tn = 5, 2, 3, 10
    # class 1 is "positive": rows = true, so [[tn, fp], [fn, tp]]
    m = classification_metrics(*_from_confusion([[tn, fp], [fn, tp]]), n_classes=2)
    classic = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["mcc"] == pytest.approx(classic)
    assert "f1_1" in m and "f1_up" not in m


def test_perfect_predictions():
    y = np.array([0, 1, 2, 1, 1, 0])
    m = classification_metrics(y, y)
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "mcc", "kappa"):
        assert m[key] == pytest.approx(1.0), key


def test_all_wrong_predictions():
    m = classification_metrics(np.array([0, 1, 2]), np.array([1, 2, 0]))
    assert m["accuracy"] == 0.0 and m["macro_f1"] == 0.0
    # mcc = (0*3 - 3)/sqrt((9-3)(9-3)) = -1/2; kappa = (0 - 1/3)/(1 - 1/3) = -1/2
    assert m["mcc"] == pytest.approx(-0.5)
    assert m["kappa"] == pytest.approx(-0.5)


def test_a_single_class_everywhere_gives_zeros_not_nan():
    y = np.ones(5, dtype=np.int64)
    m = classification_metrics(y, y)
    assert m["accuracy"] == 1.0
    assert m["f1"] == [0.0, 1.0, 0.0]
    assert m["macro_f1"] == pytest.approx(1 / 3)
    assert m["mcc"] == 0.0 and m["kappa"] == 0.0


def test_a_constant_prediction_gives_zero_precision_for_classes_never_predicted():
    m = classification_metrics(np.array([0, 1, 2, 2]), np.array([2, 2, 2, 2]))
    assert m["precision"] == pytest.approx([0.0, 0.0, 0.5])
    assert m["recall"] == [0.0, 0.0, 1.0]
    assert m["mcc"] == 0.0 and m["kappa"] == 0.0
    assert all(not math.isnan(v) for v in m.values() if isinstance(v, float))


def test_log_loss_by_hand_and_clipped():
    y = np.array([0, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    m = classification_metrics(y, np.array([0, 1]), probs)
    assert m["log_loss"] == pytest.approx(-(math.log(0.7) + math.log(0.8)) / 2)
    certain_miss = classification_metrics(y, np.array([1, 1]), np.array([[0, 1, 0], [0, 1, 0]]))
    assert certain_miss["log_loss"] == pytest.approx(-math.log(1e-15) / 2)
    assert "log_loss" not in classification_metrics(y, y)


def test_log_loss_rejects_logits_and_a_wrong_shape():
    y = np.array([0, 1])
    with pytest.raises(ValueError, match="row 0 sums to 3"):
        classification_metrics(y, y, np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"expected shape \(2, 3\), got \(2, 2\)"):
        classification_metrics(y, y, np.array([[0.5, 0.5], [0.5, 0.5]]))


@pytest.mark.parametrize("y_true,y_pred,message", [
    (np.array([0, 1]), np.array([0, 3]), r"y_pred: class indices must be in \[0, 3\), got 3"),
    (np.array([-1, 1]), np.array([0, 1]), "y_true: .* got -1 .*drop MISSING_LABEL"),
    (np.array([0, 1]), np.array([0, 1, 2]), "they must match"),
    (np.array([], dtype=int), np.array([], dtype=int), "non-empty"),
    (np.array([0.0, 1.0]), np.array([0, 1]), "integer class indices"),
])
def test_bad_labels_are_refused(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y_true, y_pred)


def test_metrics_are_plain_python_values():
    m = classification_metrics(np.array([0, 1, 2]), np.array([0, 1, 1]), np.full((3, 3), 1 / 3))
    for key, value in m.items():
        assert type(value) in (float, list), key
    assert all(type(v) is int for row in m["confusion"] for v in row)


def test_naive_baselines_by_hand():
    y_true = np.array([1, 1, 1, 0, 2, 2])
    y_prev = np.array([-1, 1, 1, 1, 0, 2])
    out = naive_baselines(y_true, y_prev)
    assert out["majority_class"] == 1
    assert out["majority_accuracy"] == pytest.approx(0.5)
    # majority: f1_stable = 2*(1/2)*1/(3/2) = 2/3, others 0
    assert out["majority_macro_f1"] == pytest.approx(2 / 9)
    # previous (the -1 becomes the majority, 1): pred [1,1,1,1,0,2]: 4 of 6 right
    # down: p 0/1, r 0/1 -> 0; stable: p 3/4, r 3/3 -> 6/7; up: p 1/1, r 1/2 -> 2/3
    assert out["previous_accuracy"] == pytest.approx(4 / 6)
    assert out["previous_macro_f1"] == pytest.approx((6 / 7 + 2 / 3) / 3)


def test_majority_is_fitted_on_training_labels_when_given():
    y_true = np.array([2, 2, 0])
    out = naive_baselines(y_true, y_true, y_train=np.array([0, 0, 1, 0]))
    assert out["majority_class"] == 0
    assert out["majority_accuracy"] == pytest.approx(1 / 3)
    assert out["previous_accuracy"] == 1.0


def test_naive_baselines_refuse_a_misaligned_previous_label():
    with pytest.raises(ValueError, match="y_prev has shape"):
        naive_baselines(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="y_prev: class indices"):
        naive_baselines(np.array([0, 1]), np.array([0, 7]))


def test_lift_subtracts_the_best_baseline():
    baselines = {"majority_macro_f1": 0.2, "previous_macro_f1": 0.35}
    assert lift({"macro_f1": 0.5}, baselines) == pytest.approx(
        {"lift_macro_f1": 0.15, "best_baseline": "previous", "best_baseline_macro_f1": 0.35})
    assert lift({"macro_f1": 0.1}, baselines)["lift_macro_f1"] == pytest.approx(-0.25)


labels = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(labels)
def test_mcc_equals_the_correlation_of_one_hot_labels(pairs):
    true, pred = (np.array(v) for v in zip(*pairs))
    m = classification_metrics(true, pred)
    x, y = np.eye(3)[true], np.eye(3)[pred]
    cov = lambda a, b: ((a - a.mean(0)) * (b - b.mean(0))).sum()  # noqa: E731
    denominator = math.sqrt(cov(x, x) * cov(y, y))
    expected = cov(x, y) / denominator if denominator > 0 else 0.0
    assert m["mcc"] == pytest.approx(expected, abs=1e-9)
    assert -1 - 1e-12 <= m["kappa"] <= 1 + 1e-12
    assert 0.0 <= m["macro_f1"] <= 1.0
    assert np.array(m["confusion"]).sum() == len(true)
    assert m["accuracy"] == pytest.approx(np.mean(true == pred))


@settings(max_examples=60, deadline=None)
@given(labels)
def test_macro_f1_is_the_mean_of_two_hits_over_predicted_plus_true(pairs):
    true, pred = (np.array(v) for v in zip(*pairs))
    cm = confusion_matrix(true, pred)
    both = cm.sum(axis=0) + cm.sum(axis=1)
    expected = np.mean([2 * cm[k, k] / both[k] if both[k] else 0.0 for k in range(3)])
    assert classification_metrics(true, pred)["macro_f1"] == pytest.approx(expected, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(labels, st.randoms(use_true_random=False))
def test_metrics_do_not_depend_on_sample_order(pairs, rng):
    shuffled = list(pairs)
    rng.shuffle(shuffled)
    a = classification_metrics(*(np.array(v) for v in zip(*pairs)))
    b = classification_metrics(*(np.array(v) for v in zip(*shuffled)))
    assert a["confusion"] == b["confusion"]
    for key in a.keys() - {"confusion"}:
        assert a[key] == pytest.approx(b[key]), key


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix(np.array([0, 0, 2]), np.array([1, 1, 0]))
    assert cm.tolist() == [[0, 2, 0], [0, 0, 0], [1, 0, 0]]
