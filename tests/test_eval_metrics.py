"""The paper's metrics on hand-checked inputs, and equality with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, r2_score, roc_auc_score

from emotionclip.evaluation import metrics as M

Y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
S = np.array([[0.9, 0.1, 0.3], [0.8, 0.9, 0.2], [0.7, 0.2, 0.1], [0.1, 0.3, 0.5]])


def test_map_and_auc_by_hand_and_sklearn():
    # class 0: ranking pos, neg, pos -> AP (1 + 2/3) / 2; class 1 the same; class 2 has no positive
    assert M.mean_average_precision(Y, S) == pytest.approx(100 * (1 + 2 / 3) / 2)
    # class 0: 3 of 4 (pos, neg) pairs ordered right; class 1 too
    assert M.macro_roc_auc(Y, S) == pytest.approx(75.0)
    assert M.mean_average_precision(Y[:, :2], S[:, :2]) == pytest.approx(
        100 * average_precision_score(Y[:, :2], S[:, :2], average="macro"))
    assert M.macro_roc_auc(Y[:, :2], S[:, :2]) == pytest.approx(100 * roc_auc_score(Y[:, :2], S[:, :2], average="macro"))
    assert M.multilabel_metrics(Y, S)["classes_scored"] == 2


def test_random_multilabel_equals_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=(50, 26)) > 0.7).astype(int)
    s = rng.uniform(size=(50, 26))
    assert M.mean_average_precision(y, s) == pytest.approx(100 * average_precision_score(y, s, average="macro"))
    assert M.macro_roc_auc(y, s) == pytest.approx(100 * roc_auc_score(y, s, average="macro"))


def test_moviegraphs_top1_in_label_set():
    y = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 1]])
    s = np.array([[0.1, 0.5, 0.4], [0.2, 0.7, 0.1], [0.9, 0.0, 0.1]])
    # argmax 1 (not a label), 1 (a label), 0 (not a label)
    assert M.top1_in_set_accuracy(y, s) == pytest.approx(100 / 3)
    y[0, 1] = 1
    assert M.dataset_metrics("moviegraphs", y, s) == {"accuracy": pytest.approx(200 / 3)}


def test_meld_accuracy_and_weighted_f1():
    y = np.array([0, 1, 2, 2])
    scores = np.eye(3)[[0, 2, 2, 2]]
    m = M.dataset_metrics("meld", y, scores)
    assert m["accuracy"] == pytest.approx(75.0)
    # F1: class 0 = 1 (support 1), class 1 = 0 (support 1), class 2 = 0.8 (support 2)
    assert m["weighted_F1"] == pytest.approx(100 * (1 + 0 + 2 * 0.8) / 4)
    assert m["weighted_F1"] == pytest.approx(100 * f1_score(y, [0, 2, 2, 2], average="weighted"))


def test_regression_metrics():
    y = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0], [4.0, 1.0]])
    p = np.array([[1.5, 0.0], [2.0, 0.5], [2.5, 0.5], [4.0, 1.0]])
    m = M.regression_metrics(y, p, ("valence", "arousal"))
    assert m["valence_MSE"] == pytest.approx((0.25 + 0 + 0.25 + 0) / 4)
    assert m["arousal_MSE"] == pytest.approx((0 + 0.25 + 0.25 + 0) / 4)
    assert m["valence_r"] == pytest.approx(np.corrcoef(y[:, 0], p[:, 0])[0, 1])
    assert M.r2_percent(y, p) == pytest.approx(100 * r2_score(y, p))
