"""Linear probes: the authors' classifiers, the C choice, Ridge + Savitzky-Golay."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import savgol_filter
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from emotionclip.evaluation import metrics as M
from emotionclip.evaluation import probes as P


def _multilabel(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    w = rng.normal(size=(8, 5))
    y = (x @ w > 0.3).astype(int)
    y[0] = 1  # every class has a positive
    return x, y


def test_preset_probe_equals_authors_classifier():
    xtr, ytr = _multilabel(60, 0)
    xte, yte = _multilabel(30, 1)
    res = P.classification_probe("bold", "multilabel", 5, 3.16, (xtr, ytr), None, {"val": (xte, yte)},
                                 P.ProbeConfig(c_mode="preset"))
    assert res.c == 3.16 and res.c_source == "preset"
    ref = OneVsRestClassifier(LogisticRegression(random_state=2022, max_iter=2000, C=3.16, solver="sag")).fit(xtr, ytr)
    p = ref.predict_proba(xte)
    assert res.metrics["val"]["mAP"] == pytest.approx(M.mean_average_precision(yte, p))
    assert res.metrics["val"]["AUC"] == pytest.approx(M.macro_roc_auc(yte, p))


def test_search_picks_best_c_on_validation():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 6))
    y = (x[:, 0] + 0.8 * rng.normal(size=120) > 0).astype(int) + (x[:, 1] > 1).astype(int)
    cfg = P.ProbeConfig(c_mode="grid", c_grid=(0.001, 0.1, 10.0))
    res = P.classification_probe("meld", "multiclass", 7, 8.0, (x[:80], y[:80]), (x[80:100], y[80:100]),
                                 {"test": (x[100:], y[100:])}, cfg, val_name="dev")
    assert set(res.search_scores) == {0.001, 0.1, 10.0}
    assert res.c == max(res.search_scores, key=lambda c: (res.search_scores[c], -c))
    assert res.c_source == "search:dev"
    # probabilities are placed in the dataset's 7 class columns: argmax = class index
    assert 0 <= res.metrics["test"]["accuracy"] <= 100


def test_search_without_val_uses_holdout_of_train():
    xtr, ytr = _multilabel(50, 4)
    cfg = P.ProbeConfig(c_mode="grid", c_grid=(0.1, 1.0))
    res = P.classification_probe("bold", "multilabel", 5, 3.16, (xtr, ytr), None, {"val": _multilabel(20, 5)}, cfg)
    assert res.c_source == "search:holdout0.2-of-train" and res.c in (0.1, 1.0)
    a, b = P.holdout_split(50, 0.2, 2022)
    assert len(b) == 10 and not set(a) & set(b)


def test_given_c_overrides_preset():
    xtr, ytr = _multilabel(40, 6)
    res = P.classification_probe("emotic", "multilabel", 5, 2.5, (xtr, ytr), None, {"test": (xtr, ytr)},
                                 P.ProbeConfig(c=0.5))
    assert (res.c, res.c_source) == (0.5, "given")


def test_savgol_sequence_matches_scipy_and_per_movie_stays_inside_movies():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=250)
    out, note = P.smooth(pred, None, 100, 3, "sequence")
    np.testing.assert_allclose(out, savgol_filter(pred, 100, 3))
    assert note == {"smoothing": "sequence", "window": 100, "order": 3}
    # two movies with constant predictions: per-movie smoothing keeps them, whole-sequence blends them
    pred = np.r_[np.zeros(30), np.full(30, 10.0)]
    groups = ["a"] * 30 + ["b"] * 30
    per, _ = P.smooth(pred, groups, 100, 3, "per_movie")
    np.testing.assert_allclose(per, pred, atol=1e-9)
    seq, _ = P.smooth(pred, groups, 100, 3, "sequence")
    assert np.abs(seq - pred).max() > 0.5
    raw, _ = P.smooth(pred, groups, 100, 3, "none")
    np.testing.assert_array_equal(raw, pred)


def test_regression_probe_ridge_then_smoothing():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4))
    y = np.c_[x[:, 0], x[:, 1] * 0.5]
    groups = ["m1"] * 20 + ["m2"] * 20
    res = P.regression_probe("liris", ("valence", "arousal"), (x, y), {"test": (x, y, groups)},
                             P.ProbeConfig(smoothing="none"))
    assert res.metrics["test"]["valence_r"] > 0.99 and res.metrics["test"]["valence_MSE"] < 0.01
    res2 = P.regression_probe("liris", ("valence", "arousal"), (x, y), {"test": (x, y, groups)},
                              P.ProbeConfig(smoothing="per_movie", savgol_window=7))
    assert res2.notes["smoothing"] == "per_movie" and res2.notes["window"] == 7
    assert res2.metrics["test"]["valence_MSE"] > res.metrics["test"]["valence_MSE"]
